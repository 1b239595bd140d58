"""Orchestration only: Prefect flows and batch entry points that call selflearn's stages in order."""
