"""The web door: member pages, the editor's desk and the JSON API, thin adapters over the services."""
