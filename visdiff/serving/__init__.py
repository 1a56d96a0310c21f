"""Ray Serve application that hosts the proposer LLM behind an OpenAI-compatible API."""
