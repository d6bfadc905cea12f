"""The OAuth 2.0 protocol core: Authlib lives here and nowhere else; no web framework."""
