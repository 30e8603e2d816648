from django.urls import path

from hello import views

urlpatterns = [
    path("", views.index),
    path("form/", views.form, name="form"),
    path("upload/", views.upload),
    path("redirect/", views.go_redirect),
    path("cookie/set/", views.cookie_set),
    path("cookie/get/", views.cookie_get),
    path("async/", views.async_view),
    path("sync/", views.sync_view),
]
