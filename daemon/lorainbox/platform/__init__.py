"""The operating system behind small interfaces: the login agent, notifications, sensors."""
