"""The `llava` console script: one command, one subcommand per task."""
