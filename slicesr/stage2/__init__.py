"""Stage II: 3D super-resolution generators trained on (synthetic) HR volumes."""
