"""What a person types and sees: the command line, progress bars, the status page, menu bar, chat, demo."""
