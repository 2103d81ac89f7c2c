"""Platform adapters (web, Discord, Telegram, terminal). Never imports ``engine`` or torch."""
