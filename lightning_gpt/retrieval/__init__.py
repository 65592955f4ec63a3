"""Chat with your documents: files read into cited passages (documents.py), their cached BM25 index and the
prompt that carries them (index.py)."""
