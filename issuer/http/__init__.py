"""The Starlette side: routes, request reading, responses. No protocol logic lives here."""
