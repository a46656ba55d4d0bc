"""The portraitkit command line (installed as `portraitkit_cli`): parsing and rendering only."""
