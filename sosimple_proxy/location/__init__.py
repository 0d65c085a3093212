"""Location service: ILocator providers and the chain that asks them in turn."""
