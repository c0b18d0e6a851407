"""Model doubles (python-backend model files) that tests copy into temporary repositories."""
