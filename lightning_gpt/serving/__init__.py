"""`lightning-gpt serve` and `web`: the HTTP app (app.py), the generation engine (engine.py), the OpenAI wire format
(openai_schema.py), the chat page (web.py, index.html)."""
