"""`python -m cluster` runs the command line."""

from cluster.cli import main

if __name__ == "__main__":
    main()
