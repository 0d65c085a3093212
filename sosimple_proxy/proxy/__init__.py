"""The transaction user: proxy core, registrar, redirect mode."""
