"""Real networks: the bundled digits MLP and the packaged all-MiniLM-L6-v2 transformer."""
