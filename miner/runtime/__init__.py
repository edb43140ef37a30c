"""What every layer stands on: configuration, defaults, the database and migrations, errors, locks, cores, the embedded broker, local workers."""
