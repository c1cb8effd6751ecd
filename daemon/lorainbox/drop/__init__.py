"""What a drop holds: its recipe, its data, and whether earlier results still match them."""
