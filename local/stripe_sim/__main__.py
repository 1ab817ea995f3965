"""`python -m local.stripe_sim [--port N] [--webhook-url URL]`."""

from local.stripe_sim.server import main

main()
