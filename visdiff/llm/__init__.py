"""The one seam between VisDiff and any LLM: OpenAI chat-completions models and an HTTP client."""
