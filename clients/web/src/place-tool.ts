// The placing tools: an image dragged out as a rectangle (a texture on the surface) and a sticker clicked into
// place, each from a picture file the user picks.
import { byId, readNumber } from "./dom";
import type { EditorState } from "./editor-state";
import type { EditSender } from "./edits";
import type { Vec2 } from "./generated/messages";
import { rounded } from "./geometry";
import { stickerOp, textureOp } from "./ops";
import { toast } from "./status";
import type { Preview } from "./view";

type Purpose = "image" | "sticker";

export class PlaceTool {
  private imageBytes: Uint8Array | null = null;
  /** The picked image, for the local preview while it is placed. */
  private imageBitmap: ImageBitmap | null = null;
  private stickerBytes: Uint8Array | null = null;
  private stickerAspect = 1;
  /** A sticker point clicked before its picture was picked: placed once it is. */
  private pendingSticker: { at: Vec2; frame: number } | null = null;

  constructor(private readonly state: EditorState, private readonly edits: EditSender,
              private readonly useTool: (tool: Purpose) => void) {}

  bind(): void {
    for (const purpose of ["image", "sticker"] as const) {
      byId<HTMLInputElement>(`${purpose}-file`).addEventListener("change", (e) =>
        void this.load(e.target as HTMLInputElement, purpose));
    }
  }

  get hasImage(): boolean {
    return this.imageBytes !== null;
  }

  /** The image tool without an image: ask for one first. */
  askForImage(): void {
    toast("Pick an image first");
    byId<HTMLInputElement>("image-file").click();
  }

  /** Place the picked image over the rectangle a..b that `preview` shows. */
  placeImage(a: Vec2, b: Vec2, preview: Preview): void {
    if (!this.imageBytes) return;
    const id = this.edits.newId("texture");
    const op = textureOp(id, this.state.frame, this.imageBytes, a, b, readNumber("image-opacity"));
    if (!op) {
      toast("Drag a rectangle to place the image");
      return;
    }
    preview.opId = id;
    if (this.imageBitmap) preview.image = this.imageBitmap;
    preview.opacity = readNumber("image-opacity");
    this.edits.send(op, preview);
  }

  placeSticker(at: Vec2): void {
    const frame = this.state.frame;
    if (!this.stickerBytes) {
      // Point first, image second: remember the point and place the sticker once an image is picked.
      this.pendingSticker = { at, frame };
      toast("Now pick the sticker image", false);
      byId<HTMLInputElement>("sticker-file").click();
      return;
    }
    const size = readNumber("sticker-size");
    const id = this.edits.newId("sticker");
    const position = rounded([at])[0] as Vec2;
    this.edits.send(stickerOp(id, frame, this.stickerBytes, position, [size, Math.round(size / this.stickerAspect)]), {
      opId: id,
      frame,
      kind: "sticker",
      points: [position],
      width: size,
      color: "",
      opacity: 1,
      seq: null,
    });
  }

  private async load(input: HTMLInputElement, purpose: Purpose): Promise<void> {
    const file = input.files?.[0];
    if (!file) return;
    const bytes = new Uint8Array(await file.arrayBuffer());
    let bitmap: ImageBitmap;
    try {
      bitmap = await createImageBitmap(new Blob([bytes], { type: file.type }));
    } catch {
      toast(`${file.name} is not an image this browser can read`);
      return;
    }
    if (purpose === "image") {
      this.imageBytes = bytes;
      this.imageBitmap?.close();
      this.imageBitmap = await createImageBitmap(bitmap);
      this.useTool("image");
    } else {
      this.stickerBytes = bytes;
      this.stickerAspect = bitmap.width / Math.max(1, bitmap.height);
      this.useTool("sticker");
      const pending = this.pendingSticker;
      this.pendingSticker = null;
      if (pending && pending.frame === this.state.frame) this.placeSticker(pending.at);
    }
    byId(`${purpose}-name`).textContent = `${file.name} · ${bitmap.width}×${bitmap.height}`;
    bitmap.close();
    input.dataset.loaded = "true";
  }
}
