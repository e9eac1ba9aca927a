"""Teacher-generated data: prompts -> a backend (in-process ``generate``; an OpenAI-compatible endpoint to come)
-> provenance-stamped records in append-only shards (``distill generate``)."""
