"""The CA's command line: `bulwark ca serve` and its flag table, `token`, `rotate`, `intermediate`, `certs` (the record), and the one HTTP client of the admin API they share."""
