"""portraitkit: a Supabase-native service layer for batch portrait generation."""

__version__ = "0.1.0"
