"""The agent's command line: `bulwark agent run` and its flags, made from the settings
table of `agent.config` (`commands`), and `bulwark agent status`, which shows what a running
agent serves over its socket (`status`)."""
