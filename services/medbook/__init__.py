"""medbook: a medical booking saga between a booking and a discount service."""
