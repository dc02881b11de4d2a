"""Pure: model, identity, desired state, health, diff, plan. Imports only runtime.base."""
