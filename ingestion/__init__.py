"""Document ingestion engine: parse, chunk, embed, index and search.

Plain Python with no Django import. Heavy models are loaded lazily, never at import.
"""
