"""pyapply: manifests -> desired model -> diff -> plan -> execute."""
