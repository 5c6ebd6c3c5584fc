"""What the paper's method is compared against: baseline trainers and verifiers."""
