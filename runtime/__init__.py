"""Container runtimes pyapply drives, behind the protocol in `runtime.base`."""
