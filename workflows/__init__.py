"""Config, super-OP, workflow building and the command line."""
