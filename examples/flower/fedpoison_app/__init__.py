"""A Flower app: MNIST logistic regression on 20 SuperNodes, hardened and red-teamed with
fedpoison (Krum under Fang et al.'s Krum attack by default)."""
