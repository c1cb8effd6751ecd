"""What every part uses: errors, settings, the event hub, atomic files, the job folder's layout."""
