"""The model repository: Triton's directory layout, version policies, hot loading."""
