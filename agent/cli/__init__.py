"""The agent's command line: `bulwark agent run` (`commands`) and `bulwark agent status` against a running agent's socket (`status`)."""
