"""Request and response schemas of the service (pydantic; imported only when serving).

Strict models: a number is never silently turned into a text, nor a string into a number.
"""
from __future__ import annotations

from typing import Annotated, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator


class EmbeddingRequest(BaseModel):
    # extra fields that OpenAI clients may send are ignored
    model_config = ConfigDict(strict=True, extra="ignore")
    input: Union[StrictStr, List[StrictStr]] = Field(description="one text or a list of texts")
    model: Optional[StrictStr] = Field(None, description="accepted and ignored: the server serves one model")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, description="must equal the model's width if given")
    user: Optional[StrictStr] = None

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, v):
        if isinstance(v, list) and v and (isinstance(v[0], int) or isinstance(v[0], list)):
            raise ValueError("token-id input is not supported; send the texts as strings")
        return v


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[List[float], str] = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: List[Embedding]
    model: str
    usage: Usage


class InvertRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    text: Optional[StrictStr] = Field(None, description="a text to encode and invert")
    vector: Optional[List[float]] = Field(None, description="a sentence vector of the model's width")
    beam: Optional[Annotated[int, Field(ge=1)]] = Field(None, description="beam width (default: the run's)")


class InvertResponse(BaseModel):
    object: Literal["inversion"] = "inversion"
    model: str
    text: Optional[str] = None
    reconstruction: str
    cosine: Optional[float]
    steps: List[dict]
    encoder_calls: int
    seconds: float


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
