"""Reusable test helpers (fake servers, builders); no Django import here."""
