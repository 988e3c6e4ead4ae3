"""Real mail servers for the tests: an aiosmtpd SMTP server with faults, and a Dovecot rig."""
