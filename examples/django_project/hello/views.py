import asyncio
import hashlib
import threading

from django.http import (
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST


def text(body, status=200):
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


@require_GET
def index(request):
    return text("Hello from Django\n")


@require_http_methods(["GET", "POST"])
def form(request):
    # CsrfViewMiddleware rejects a POST without a valid token with 403
    # before this view runs.
    if request.method == "POST":
        return text(f"Hello, {request.POST.get('name', '')}!\n")
    return render(request, "hello/form.html")


@csrf_exempt
@require_POST
def upload(request):
    f = request.FILES.get("file")
    if f is None:
        return HttpResponseBadRequest("multipart field 'file' is required\n")
    digest = hashlib.sha256()
    size = 0
    for chunk in f.chunks():
        size += len(chunk)
        digest.update(chunk)
    return JsonResponse({"name": f.name, "size": size, "sha256": digest.hexdigest()})


@require_GET
def go_redirect(request):
    # reverse() adds SCRIPT_NAME: under a prefix (--mount, Apache's ProxyPass /app)
    # the redirect stays under it.
    return HttpResponseRedirect(reverse("form"))


@require_GET
def cookie_set(request):
    response = text("cookies set\n")
    response.set_cookie("a", "1", path="/")
    response.set_cookie("b", "2", path="/")
    return response


@require_GET
def cookie_get(request):
    return JsonResponse(dict(request.COOKIES))


def _where(view):
    """Which kind of view answered, and on which thread: under ASGI an async view runs
    on the event loop's thread, a sync one in a worker thread (asgiref's sync_to_async),
    never on the loop."""
    try:
        asyncio.get_running_loop()
        on_loop = True
    except RuntimeError:
        on_loop = False
    return {"view": view, "thread": threading.current_thread().name, "on_event_loop": on_loop}


@require_GET
async def async_view(request):
    # Awaits without holding a thread: a real view awaits a database or an HTTP call.
    await asyncio.sleep(float(request.GET.get("delay", "0")))
    return JsonResponse(_where("async"))


@require_GET
def sync_view(request):
    return JsonResponse(_where("sync"))
