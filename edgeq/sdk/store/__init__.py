"""The device store: verified atomic installs, versions and rollback, the derived cache, TUF updates."""
