"""The database side of portraitkit: embedded server, connections, migrations."""
