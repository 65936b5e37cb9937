"""The end-to-end project's async views: the ORM's async methods, run by uvicorn through asgiref."""

from django.http import HttpRequest, HttpResponse

from tests.e2e.shop.models import Setting


async def count(request: HttpRequest) -> HttpResponse:
    number = await Setting.objects.acount()  # opens: acount
    return HttpResponse(str(number), content_type="text/plain")


async def create(request: HttpRequest, token: str) -> HttpResponse:
    setting = await Setting.objects.acreate(key=token, value="created")  # opens: acreate
    return HttpResponse(setting.key, content_type="text/plain")
