"""Turning a trained model into files other tools run: GGUF for llama.cpp and Ollama."""
