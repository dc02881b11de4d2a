"""What people and machines read: plan text and JSON, progress, tables."""
