"""The operational questions, shared by the CLI (`governor ask`) and the worker's HTTP views."""
