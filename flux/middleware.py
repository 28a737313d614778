"""Turn the services' refusals into clear 4xx pages, so no view has to repeat the mapping."""

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from boards.errors import FluxError, ForbiddenError, NotFoundError, refusal_message


class ServiceErrorMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, NotFoundError):
            raise Http404(exception.message) from exception
        if isinstance(exception, ForbiddenError):
            raise PermissionDenied(exception.message) from exception
        if isinstance(exception, FluxError | ValidationError):
            status = exception.status if isinstance(exception, FluxError) else 422
            context = {"message": refusal_message(exception)}
            return render(request, "error.html", context, status=status)
        return None
