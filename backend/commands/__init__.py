"""The backend's `g4seg` commands (registered in pyproject.toml): `serve`, `preannotate`, `sweep`, `dead-letters`."""
