// Drawing ROI polygons on a video frame: click to add points, click the first point (or Enter) to close a
// region, drag a point to move it, drag an edge's middle handle to add a point, double-click a point (or
// Delete) to remove it. Several closed polygons are several regions: the fit keeps them separate.

export type Point = [number, number];

export interface Region {
  points: Point[];
  closed: boolean;
}

const HIT_PX = 9; // how close (CSS pixels) a click must be to grab a point or a handle
const COLORS = ["#4da3ff", "#ffb020", "#34c759", "#ff5ac8", "#a98bff", "#2fd4c8"];

export class RoiEditor {
  regions: Region[] = [];
  private image: ImageBitmap | null = null;
  private width = 1; // the video's size: points are in these pixels
  private height = 1;
  private dragging: { region: number; index: number; pointerId: number } | null = null;
  private selected: { region: number; index: number } | null = null;
  /** Called after every change of the regions. */
  onChange: () => void = () => undefined;

  constructor(readonly canvas: HTMLCanvasElement) {
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", (e) => this.up(e));
    canvas.addEventListener("pointercancel", (e) => this.up(e));
    canvas.addEventListener("dblclick", (e) => this.doubleClick(e));
    canvas.addEventListener("keydown", (e) => this.key(e));
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /** Show a frame of a video of `width`x`height` pixels (the image may be scaled down). */
  setFrame(image: ImageBitmap, width: number, height: number): void {
    this.image?.close();
    this.image = image;
    this.width = width;
    this.height = height;
    this.draw();
  }

  /** Closed regions of 3+ points (open ones of 3+ points are closed here), in video pixels. */
  polygons(): Point[][] {
    return this.regions.filter((r) => r.points.length >= 3).map((r) => r.points.map(([x, y]) => [round2(x), round2(y)]));
  }

  closedCount(): number {
    return this.regions.filter((r) => r.closed && r.points.length >= 3).length;
  }

  /** Start the next click on a new region (the open one, if any, is closed when it has 3 points). */
  newRegion(): void {
    this.closeOpen();
    this.regions = this.regions.filter((r) => r.points.length >= 3);
    this.changed();
  }

  removeRegion(): void {
    const index = this.selected?.region ?? this.regions.length - 1;
    if (index >= 0) this.regions.splice(index, 1);
    this.selected = null;
    this.changed();
  }

  clear(): void {
    this.regions = [];
    this.selected = null;
    this.changed();
  }

  /** Screen position (client coordinates) of a video pixel: tests drive the mouse with it. */
  clientPoint(x: number, y: number): Point {
    const rect = this.canvas.getBoundingClientRect();
    const { scale, ox, oy } = this.layout();
    return [rect.left + ox + x * scale, rect.top + oy + y * scale];
  }

  // ------------------------------------------------------------------ pointer

  private down(e: PointerEvent): void {
    if (e.button !== 0) return;
    this.canvas.focus();
    const p = this.toVideo(e);
    const hit = this.hitPoint(e);
    const open = this.openRegion();
    if (hit) {
      const region = this.regions[hit.region] as Region;
      if (!region.closed && hit.index === 0 && region.points.length >= 3 && hit.region === open) {
        region.closed = true; // clicking the first point closes the region
        this.selected = null;
        this.changed();
        return;
      }
      this.startDrag(hit.region, hit.index, e);
      return;
    }
    const edge = this.hitEdge(e);
    if (edge) {
      const region = this.regions[edge.region] as Region;
      region.points.splice(edge.index + 1, 0, p);
      this.startDrag(edge.region, edge.index + 1, e);
      this.changed();
      return;
    }
    if (open >= 0) (this.regions[open] as Region).points.push(p);
    else this.regions.push({ points: [p], closed: false });
    const region = open >= 0 ? open : this.regions.length - 1;
    this.selected = { region, index: (this.regions[region] as Region).points.length - 1 };
    this.changed();
  }

  private startDrag(region: number, index: number, e: PointerEvent): void {
    this.dragging = { region, index, pointerId: e.pointerId };
    this.selected = { region, index };
    this.canvas.setPointerCapture(e.pointerId);
    this.draw();
  }

  private move(e: PointerEvent): void {
    if (!this.dragging || e.pointerId !== this.dragging.pointerId) {
      this.canvas.style.cursor = this.hitPoint(e) || this.hitEdge(e) ? "move" : "crosshair";
      return;
    }
    const region = this.regions[this.dragging.region] as Region;
    region.points[this.dragging.index] = this.toVideo(e);
    this.draw();
  }

  private up(e: PointerEvent): void {
    if (!this.dragging || e.pointerId !== this.dragging.pointerId) return;
    this.dragging = null;
    this.changed();
  }

  private doubleClick(e: MouseEvent): void {
    const hit = this.hitPoint(e);
    if (hit) this.removePoint(hit.region, hit.index);
  }

  private key(e: KeyboardEvent): void {
    if (e.key === "Enter") {
      this.closeOpen();
      this.changed();
    } else if (e.key === "Escape") {
      const open = this.openRegion();
      if (open >= 0) this.regions.splice(open, 1);
      this.changed();
    } else if ((e.key === "Delete" || e.key === "Backspace") && this.selected) {
      this.removePoint(this.selected.region, this.selected.index);
    } else return;
    e.preventDefault();
  }

  private removePoint(regionIndex: number, index: number): void {
    const region = this.regions[regionIndex];
    if (!region) return;
    region.points.splice(index, 1);
    if (region.points.length === 0 || (region.closed && region.points.length < 3)) this.regions.splice(regionIndex, 1);
    this.selected = null;
    this.changed();
  }

  private closeOpen(): void {
    const open = this.openRegion();
    if (open >= 0 && (this.regions[open] as Region).points.length >= 3) (this.regions[open] as Region).closed = true;
  }

  private openRegion(): number {
    return this.regions.findIndex((r) => !r.closed);
  }

  private changed(): void {
    this.canvas.dataset.regions = String(this.closedCount());
    this.canvas.dataset.points = String(this.regions.reduce((n, r) => n + r.points.length, 0));
    this.draw();
    this.onChange();
  }

  // ------------------------------------------------------------------ geometry

  private layout(): { scale: number; ox: number; oy: number } {
    const rect = this.canvas.getBoundingClientRect();
    const scale = Math.min(rect.width / this.width, rect.height / this.height);
    return { scale, ox: (rect.width - this.width * scale) / 2, oy: (rect.height - this.height * scale) / 2 };
  }

  private toVideo(e: MouseEvent): Point {
    const rect = this.canvas.getBoundingClientRect();
    const { scale, ox, oy } = this.layout();
    const x = (e.clientX - rect.left - ox) / scale;
    const y = (e.clientY - rect.top - oy) / scale;
    return [Math.min(Math.max(x, 0), this.width), Math.min(Math.max(y, 0), this.height)];
  }

  private hitPoint(e: MouseEvent): { region: number; index: number } | null {
    const [cx, cy] = [e.clientX, e.clientY];
    let best: { region: number; index: number } | null = null;
    let bestD = HIT_PX;
    this.regions.forEach((region, r) =>
      region.points.forEach(([x, y], i) => {
        const [px, py] = this.clientPoint(x, y);
        const d = Math.hypot(px - cx, py - cy);
        if (d <= bestD) {
          bestD = d;
          best = { region: r, index: i };
        }
      }),
    );
    return best;
  }

  /** The middle handle of a closed region's edge under the pointer: dragging it adds a point there. */
  private hitEdge(e: MouseEvent): { region: number; index: number } | null {
    for (const [r, region] of this.regions.entries()) {
      if (!region.closed) continue;
      for (let i = 0; i < region.points.length; i++) {
        const [x, y] = middle(region.points[i] as Point, region.points[(i + 1) % region.points.length] as Point);
        const [px, py] = this.clientPoint(x, y);
        if (Math.hypot(px - e.clientX, py - e.clientY) <= HIT_PX) return { region: r, index: i };
      }
    }
    return null;
  }

  // ------------------------------------------------------------------ drawing

  draw(): void {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const rect = canvas.getBoundingClientRect();
    canvas.width = Math.max(1, Math.round(rect.width * dpr));
    canvas.height = Math.max(1, Math.round(rect.height * dpr));
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, rect.width, rect.height);
    const { scale, ox, oy } = this.layout();
    if (this.image) {
      ctx.imageSmoothingEnabled = scale < 1;
      ctx.drawImage(this.image, ox, oy, this.width * scale, this.height * scale);
    }
    const at = ([x, y]: Point): Point => [ox + x * scale, oy + y * scale];
    this.regions.forEach((region, r) => {
      const color = COLORS[r % COLORS.length] as string;
      const pts = region.points.map(at);
      if (pts.length === 0) return;
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (region.closed) {
        ctx.closePath();
        ctx.fillStyle = `${color}40`;
        ctx.fill();
      }
      ctx.lineWidth = 2;
      ctx.strokeStyle = color;
      ctx.setLineDash(region.closed ? [] : [6, 4]);
      ctx.stroke();
      ctx.setLineDash([]);
      if (region.closed) {
        for (let i = 0; i < pts.length; i++) {
          const [mx, my] = middle(pts[i] as Point, pts[(i + 1) % pts.length] as Point);
          ctx.beginPath();
          ctx.arc(mx, my, 3.5, 0, 2 * Math.PI);
          ctx.strokeStyle = color;
          ctx.lineWidth = 1.5;
          ctx.stroke();
        }
        const [lx, ly] = pts.reduce(([a, b], [x, y]) => [a + x / pts.length, b + y / pts.length], [0, 0]);
        ctx.font = "600 12px system-ui, sans-serif";
        ctx.fillStyle = "#fff";
        ctx.textAlign = "center";
        ctx.fillText(`Region ${r + 1}`, lx, ly);
      }
      pts.forEach(([x, y], i) => {
        const isSelected = this.selected?.region === r && this.selected.index === i;
        ctx.beginPath();
        ctx.arc(x, y, isSelected ? 6 : 5, 0, 2 * Math.PI);
        ctx.fillStyle = i === 0 && !region.closed ? "#fff" : color;
        ctx.fill();
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = "#000";
        ctx.stroke();
      });
    });
  }
}

function middle(a: Point, b: Point): Point {
  return [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
}

function round2(v: number): number {
  return Math.round(v * 100) / 100;
}
