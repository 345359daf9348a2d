// What the chat tests do on a chat page (src/node/web/chat.html): type a message, read the list.

/** Types `text` into the composer and sends it (Enter). */
export async function say(page, text) {
  await page.focus('#composer-input');
  await page.keyboard.insertText(text);
  await page.keyboard.press('Enter');
}

/** The stored messages (with a seq) in the list, in order: `{seq, from, body}`. */
export function stored(page) {
  return page.$$eval('#message-list li[data-seq]:not(.pending)', (lis) =>
    lis.map((li) => ({ seq: Number(li.dataset.seq), from: li.querySelector('.from').textContent, body: li.querySelector('.body').textContent })),
  );
}
