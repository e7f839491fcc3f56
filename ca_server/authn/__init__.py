"""Who is calling: the ordered authenticators (client certificate, TokenReview, JWT/JWKS), the plan that lists them, and the embedded local token issuer."""
