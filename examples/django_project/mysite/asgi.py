"""ASGI entry point: `postern mysite.asgi:application --chdir examples/django_project`.

Django's ASGIHandler is an object whose `__call__` is a coroutine function: postern
detects an ASGI app and serves it on an asyncio event loop. Async views run on that
loop; sync views (and sync middleware) run in a thread through asgiref's
`sync_to_async`. Django answers the lifespan scope with an error, so with
`--lifespan auto` (the default) postern goes on without a lifespan.
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_asgi_application()
