"""API routes: /api/v1/… plus the unversioned aliases /api/rag/, /api/generate/, /api/status/."""

from __future__ import annotations

from django.urls import path

from knowledge.api import openai_compat, views

v1 = [
    path("generate/", views.GenerateApi.as_view(), name="api-v1-generate-create"),
    path("rag/", views.RagApi.as_view(), name="api-v1-rag-create"),
    path("status/", views.StatusApi.as_view(), name="api-v1-status-detail"),
    path("documents/", views.DocumentListApi.as_view(), name="api-v1-document-list"),
    path("documents/<int:document_id>/", views.DocumentDetailApi.as_view(), name="api-v1-document-detail"),
    path("documents/<int:document_id>/file/", views.DocumentFileApi.as_view(), name="api-v1-document-file"),
    path("sources/", views.SourceListApi.as_view(), name="api-v1-source-list"),
    path("sources/<int:source_id>/sync/", views.SourceSyncApi.as_view(), name="api-v1-source-sync"),
    path("tasks/<uuid:task_id>/", views.TaskDetailApi.as_view(), name="api-v1-task-detail"),
    path("openai/chat/completions", openai_compat.OpenAIChatCreateApi.as_view(), name="api-v1-openai-chat-create"),
    path("openai/models", openai_compat.OpenAIModelListApi.as_view(), name="api-v1-openai-models-list"),
]

aliases = [
    path("rag/", views.RagApi.as_view(), name="api-rag-create"),
    path("generate/", views.GenerateApi.as_view(), name="api-generate-create"),
    path("status/", views.StatusApi.as_view(), name="api-status-detail"),
]
